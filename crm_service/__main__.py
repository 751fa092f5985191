"""``python -m crm_service``."""

from crm_service.cli import main

main()
