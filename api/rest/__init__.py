"""The REST views: one blueprint per resource, thin views over ``crm_service`` functions.

Request and response shapes are in ``api.schemas``; errors map through ``api.errors``. May
import ``api`` (auth, schemas, services, errors) and ``crm_service``; never ``api.console``.
"""
