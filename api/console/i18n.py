"""The console's words in English and Simplified Chinese.

One table, so a missing translation is a test failure, not a blank on an agent's screen. The
language comes from the ``crm_lang`` cookie (set by the switch in the page header), else from the
browser's ``Accept-Language``, else English. Tier, segment and action names are looked up with
their prefix (``tier.high_value``); a name the table does not know (a custom action from the tier
policy, say) is shown as it is.
"""

from __future__ import annotations

from collections.abc import Iterable

LANGUAGES = ("en", "zh-Hans")
DEFAULT = "en"
LANGUAGE_NAMES = {"en": "English", "zh-Hans": "简体中文"}

# key: (English, Simplified Chinese). Placeholders are str.format fields.
MESSAGES: dict[str, tuple[str, str]] = {
    "app.name": ("crm-service console", "crm-service 控制台"),
    "nav.skip": ("Skip to content", "跳到正文"),
    "nav.lookup": ("Look up", "查询客户"),
    "nav.dashboard": ("Dashboard", "概览"),
    "nav.signed_in_as": ("Signed in with key {name}", "已用密钥 {name} 登录"),
    "nav.sign_out": ("Sign out", "退出登录"),
    "nav.language": ("Language", "语言"),
    "sign_in.title": ("Sign in", "登录"),
    "sign_in.key": ("API key", "API 密钥"),
    "sign_in.help": ("Use a key with the customers:read scope. It is checked once and kept on "
                     "the server: it never appears in a page or a URL.",
                     "请使用带 customers:read 权限的密钥。密钥只在登录时校验一次并保存在服务器端，"
                     "不会出现在页面或网址中。"),
    "sign_in.submit": ("Sign in", "登录"),
    "sign_in.invalid": ("That API key is not valid, or it has been revoked.",
                        "该 API 密钥无效或已被吊销。"),
    "sign_in.scope": ("That API key lacks the customers:read scope the console needs.",
                      "该 API 密钥缺少控制台所需的 customers:read 权限。"),
    "sign_in.empty": ("Enter an API key.", "请输入 API 密钥。"),
    "sign_in.expired_form": ("The sign-in form expired. Please try again.",
                             "登录表单已过期，请重试。"),
    "sign_in.signed_out": ("You are signed out.", "您已退出登录。"),
    "sign_in.session_ended": ("Please sign in (your session ended or was never started).",
                              "请登录（会话已结束或尚未开始）。"),
    "search.label": ("Customer id, email, phone, channel account or order id",
                     "客户 ID、邮箱、手机号、渠道账号或订单号"),
    "search.placeholder": ("Id, email, phone, account or order", "ID、邮箱、手机号、账号或订单号"),
    "search.col_id": ("Customer id", "客户 ID"),
    "search.hint": ("Channel accounts and orders can be typed as channel/id, e.g. "
                    "tmall/tb_88231 or jd/JD-4410021, or just the id.",
                    "渠道账号和订单号可写成 渠道/编号，例如 tmall/tb_88231 或 jd/JD-4410021，"
                    "也可只写编号（如淘宝会员名、京东订单号）。"),
    "search.submit": ("Search", "搜索"),
    "search.results": ("{n} customers match “{q}”", "有 {n} 位客户匹配“{q}”"),
    "search.none_title": ("No customer found", "未找到客户"),
    "search.none": ("No customer matches “{q}” as an id, email, phone or channel account.",
                    "没有客户的 ID、邮箱、手机号或渠道账号与“{q}”匹配。"),
    "search.empty": ("Type what the customer gave you: an id, email, phone or channel account.",
                     "请输入客户提供的信息：ID、邮箱、手机号或渠道账号。"),
    "search.more": ("Showing the first {n}: type more of the email, phone or account to narrow "
                    "it down.", "仅显示前 {n} 位：请输入更完整的邮箱、手机号或账号以缩小范围。"),
    "search.matched_by": ("Matched by", "匹配方式"),
    "search.provisional": ("(provisional)", "（临时）"),
    "match.customer_id": ("customer id", "客户 ID"),
    "match.email": ("email", "邮箱"),
    "match.phone": ("phone", "手机号"),
    "match.channel_identity": ("channel account", "渠道账号"),
    "match.external_id": ("channel account id", "渠道账号 ID"),
    "home.title": ("Look up a customer", "查询客户"),
    "home.live_run": ("Scores from run {run} as of {as_of}, published {scored_at}.",
                      "评分来自评分批次 #{run}（截至 {as_of}），发布于 {scored_at}。"),
    "home.no_run": ("No scoring run has been published yet: customers have no tier.",
                    "尚未发布评分批次：客户暂无等级。"),
    "customer.title": ("Customer {id}", "客户 {id}"),
    "customer.tier": ("Tier", "等级"),
    "customer.since": ("since {date}", "自 {date} 起"),
    "customer.not_scored": ("Not scored: no paid order on or before the live run's date.",
                            "未评分：截至当前评分日期没有已付款订单。"),
    "customer.provisional": ("Provisional: orders changed after run {run}; recomputed now from "
                             "that run's models as of {as_of}.",
                             "临时结果：评分批次 #{run} 之后订单有变化，已用该批次的模型按 {as_of} "
                             "重新计算。"),
    "customer.value_segment": ("Value segment", "价值分层"),
    "customer.rfm_segment": ("RFM segment", "RFM 分群"),
    "customer.rfm_scores": ("R {r} · F {f} · M {m}", "R {r} · F {f} · M {m}"),
    "customer.clv": ("12-month CLV", "12 个月 CLV"),
    "customer.p_alive": ("P(alive)", "存活概率"),
    "customer.p_alive_not_estimated": ("not estimated", "未估计"),
    "alive_note.not_estimated": (
        "BG/NBD, the selected model, assumes a customer without a repeat purchase has not "
        "left; it cannot tell whether they have. The churn probability is the better guide.",
        "当前选用的 BG/NBD 模型假定没有复购的客户仍然活跃，无法判断其是否已流失；"
        "请以流失概率为准。"),
    "alive_note.infrequent_buyer": (
        "Probably still a customer, but unlikely to order within {days} days, hence the "
        "high churn risk.",
        "很可能仍是客户，但预计 {days} 天内不太会下单，因此流失风险高。"),
    "customer.forecast": ("Next 12 months", "未来 12 个月"),
    "customer.forecast_range": ("likely {lo} to {hi} orders, {slo} to {shi} {currency}",
                                "预计 {lo} 至 {hi} 单，{slo} 至 {shi} {currency}"),
    "customer.forecast_note": ("80% interval of this customer's own future",
                               "该客户自身的 80% 预测区间"),
    "customer.forecast_unlikely": ("unlikely to order (80% interval: no order)",
                                   "不太可能下单（80% 预测区间：无订单）"),
    "punct.colon": (": ", "："),
    "customer.forecast_none": ("no interval in this run (scored before intervals existed)",
                               "此评分批次无区间（早于区间功能）"),
    "customer.churn": ("Churn probability", "流失概率"),
    "customer.churn_horizon": ("chance of no purchase in the next {days} days",
                               "未来 {days} 天内不再购买的概率"),
    "customer.next_order": ("Expected next order", "预计下次下单"),
    "customer.next_order_none": ("none expected", "暂无预期"),
    "customer.historic_spend": ("Historic net spend", "历史净消费"),
    "customer.orders": ("Purchase occasions", "购买次数（同日合并）"),
    "customer.last_purchase": ("Last purchase", "最近购买"),
    "customer.action": ("Recommended action", "建议动作"),
    "customer.script": ("What to say", "沟通话术"),
    "customer.contact": ("Contact", "联系方式"),
    "customer.name": ("Name", "姓名"),
    "customer.email": ("Email", "邮箱"),
    "customer.phone": ("Phone", "手机号"),
    "customer.identities": ("Channel accounts", "渠道账号"),
    "customer.none": ("none", "无"),
    "customer.orders_by_channel": ("Orders by channel", "各渠道订单"),
    "customer.channel": ("Channel", "渠道"),
    "customer.paid": ("Paid", "已付款"),
    "customer.refunded": ("Refunded", "已退款"),
    "customer.cancelled": ("Cancelled", "已取消"),
    "customer.net_spend": ("Net spend", "净消费"),
    "customer.first_order": ("First order", "首单"),
    "customer.last_order": ("Last order", "最近一单"),
    "customer.no_orders": ("No orders yet.", "暂无订单。"),
    "customer.recent_orders": ("Latest orders", "最近订单"),
    "customer.order_date": ("Date", "日期"),
    "customer.order_id": ("Order id", "订单号"),
    "customer.amount": ("Amount", "金额"),
    "customer.status": ("Status", "状态"),
    "order.paid": ("paid", "已付款"),
    "order.refunded": ("refunded", "已退款"),
    "order.cancelled": ("cancelled", "已取消"),
    "customer.aliases": ("Merged customers", "已合并的客户"),
    "customer.merged_notice": ("“{asked}” was merged into this customer; this is their page.",
                               "“{asked}”已合并到此客户，以下为合并后的客户页面。"),
    "customer.history": ("Tier history", "等级变化"),
    "customer.history_none": ("No tier changes recorded.", "暂无等级变化记录。"),
    "customer.run": ("Run", "评分批次"),
    "customer.as_of": ("As of", "截至"),
    "customer.from": ("From", "原等级"),
    "customer.to": ("To", "新等级"),
    "customer.not_found_title": ("No such customer", "没有该客户"),
    "customer.not_found": ("There is no customer with id “{id}”.", "不存在 ID 为“{id}”的客户。"),
    "dash.title": ("State of the customer base", "客户概况"),
    "dash.run_line": ("Run {run} as of {as_of}: {customers} customers, 12-month CLV {clv} in "
                      "total.", "评分批次 #{run}（截至 {as_of}）：{customers} 位客户，"
                                "12 个月 CLV 合计 {clv}。"),
    "dash.no_run": ("No scoring run has been published yet. Run `crm-service score` or POST "
                    "/v1/scoring-runs.", "尚未发布评分批次。请运行 `crm-service score` 或调用 "
                                         "POST /v1/scoring-runs。"),
    "dash.tiers": ("Tiers", "等级分布"),
    "dash.customers": ("Customers", "客户数"),
    "dash.share": ("Share", "占比"),
    "dash.spend": ("Historic spend", "历史消费"),
    "dash.clv": ("12-month CLV", "12 个月 CLV"),
    "dash.transitions": ("Tier moves since the previous run", "与上一评分批次相比的等级变化"),
    "dash.transitions_none": ("This is the first run: there is nothing to compare with.",
                              "这是第一个评分批次，没有可比较的数据。"),
    "dash.from_to": ("from ↓ / to →", "原等级 ↓ / 新等级 →"),
    "dash.clv_distribution": ("CLV distribution", "CLV 分布"),
    "dash.clv_help": ("Customers ranked by 12-month CLV, in tenths: the share of all predicted "
                      "value each tenth holds.", "按 12 个月 CLV 排序后分成十等份：每一份占全部"
                                                 "预测价值的比例。"),
    "dash.decile": ("Tenth", "十分位"),
    "dash.clv_range": ("CLV range", "CLV 区间"),
    "dash.clv_not_recorded": ("Not recorded for this run (runs record it from this version "
                              "on): re-score to see it.", "本次运行未记录（新版本的运行才会记录）："
                                                          "重新评分后可见。"),
    "dash.segments": ("Segments", "分群"),
    "dash.value_segments": ("Value segments", "价值分层"),
    "dash.rfm_segments": ("RFM segments", "RFM 分群"),
    "dash.segment": ("Segment", "分群"),
    "dash.plots": ("Model diagnostics of run {run}", "评分批次 #{run} 的模型诊断"),
    "dash.calibration": ("Forecast intervals: calibration on the backtest",
                         "预测区间：回测校准"),
    "dash.calibration_help": (
        "Customers' 80% intervals run from the selected model's {lo}% quantile to its {hi}% "
        "quantile, levels learned on this run's backtest ({n} customers) so that they hold "
        "what they say. Below, where the held-out purchases fell in their predicted distributions "
        "(randomized PIT): 10% in each tenth if the model was calibrated; a heavy last tenth "
        "means more buying than predicted.",
        "客户的 80% 区间取所选模型的 {lo}% 至 {hi}% 分位数，该水平由本批次回测（{n} 位客户）学得，"
        "使区间名副其实。下表为回测期实际购买在预测分布中的位置（随机化 PIT）：若模型校准良好，"
        "每一档约 10%；最后一档偏多表示实际购买多于预测。"),
    "dash.calibration_nominal": (
        "Intervals at the nominal 10th and 90th percentiles: the backtest had too few "
        "customers to learn from.",
        "区间取名义第 10 与第 90 百分位：回测客户太少，无法校准。"),
    "dash.pit_tenth": ("PIT tenth", "PIT 分档"),
    "dash.plots_none": ("This run has no diagnostics plots.", "本次运行没有诊断图。"),
    "plot.holdout_by_frequency": ("Held-out purchases, predicted vs actual, by calibration "
                                  "frequency", "按校准期购买频次：留出期购买的预测值与实际值"),
    "plot.p_alive": ("P(alive) by frequency and recency", "按频次与最近购买的存活概率"),
    "plot.tracking": ("Cumulative repeat purchases, predicted vs actual",
                      "累计重复购买：预测值与实际值"),
    "dash.runs": ("Run history", "评分批次记录"),
    "dash.runs_help": ("Holdout MAE: the purchase model's mean error per customer when it "
                       "predicts a held-out period (lower is better). Churn AUC (ranking, higher "
                       "is better) and Brier score (calibration, lower is better) compare the "
                       "churn model with the BTYD baseline on held-out data; the one with the "
                       "better Brier score is used.",
                       "留出期 MAE：购买模型预测留出期时每位客户的平均误差（越低越好）。流失 AUC"
                       "（排序能力，越高越好）与 Brier 分数（概率校准，越低越好）在留出数据上比较"
                       "流失模型与 BTYD 基线，采用 Brier 分数更好的那个。"),
    "dash.tiers_help": ("The high-value tier ranks customers by predicted 12-month CLV; the "
                        "value segments rank them by historic net spend.",
                        "“高价值”等级按预测的 12 个月 CLV 排名；价值分层按历史净消费排名。"),
    "dash.status": ("Status", "状态"),
    "dash.model": ("Purchase model", "购买模型"),
    "dash.holdout_mae": ("Holdout MAE", "留出期 MAE"),
    "dash.churn_model": ("Churn model", "流失模型"),
    "dash.churn_auc": ("Churn AUC (model / baseline)", "流失 AUC（模型 / 基线）"),
    "dash.churn_brier": ("Churn Brier (model / baseline)", "流失 Brier（模型 / 基线）"),
    "dash.finished": ("Finished", "完成时间"),
    "dash.live": ("live", "当前"),
    "dash.dry_run": ("dry run", "试运行"),
    "dash.dry_run_note": ("not published; scores not kept", "未发布，不保留评分"),
    "dash.scores_retired": ("scores retired (retention); record and plots kept",
                            "评分明细已按保留策略清理；记录和图表保留"),
    "status.succeeded": ("succeeded", "成功"),
    "status.failed": ("failed", "失败"),
    "status.running": ("running", "运行中"),
    "status.queued": ("queued", "排队中"),
    "churn_model.ml": ("ML", "机器学习"),
    "churn_model.btyd_baseline": ("BTYD baseline", "BTYD 基线"),
    "model.bgnbd": ("BG/NBD", "BG/NBD"),
    "model.mbgnbd": ("MBG/NBD", "MBG/NBD"),
    "model.pareto_nbd": ("Pareto/NBD", "Pareto/NBD"),
    "tier.new": ("New", "新客"),
    "tier.active": ("Active", "活跃"),
    "tier.dormant": ("Dormant", "沉睡"),
    "tier.high_value": ("High value", "高价值"),
    "tier.none": ("not scored", "未评分"),
    "value.low": ("Low", "低"),
    "value.medium": ("Medium", "中"),
    "value.high": ("High", "高"),
    "risk.low": ("low", "低"),
    "risk.medium": ("medium", "中"),
    "risk.high": ("high", "高"),
    "rfm.champions": ("Champions", "重要价值客户"),
    "rfm.loyal_customers": ("Loyal customers", "忠诚客户"),
    "rfm.potential_loyalist": ("Potential loyalists", "潜在忠诚客户"),
    "rfm.new_customers": ("New customers", "新客户"),
    "rfm.promising": ("Promising", "有潜力客户"),
    "rfm.need_attention": ("Need attention", "需要关注"),
    "rfm.about_to_sleep": ("About to sleep", "即将沉睡"),
    "rfm.at_risk": ("At risk", "有流失风险"),
    "rfm.cant_lose_them": ("Can't lose them", "重要挽留客户"),
    "rfm.lost": ("Lost", "已流失"),
    "rfm.others": ("Others", "其他"),
    "action.welcome_second_purchase": ("Welcome: earn the second order", "欢迎新客：促成第二单"),
    "action.retention_offer": ("Retention offer", "挽留优惠"),
    "action.cross_sell": ("Cross-sell", "关联推荐"),
    "action.vip_care": ("VIP care", "VIP 关怀"),
    "action.vip_win_back": ("VIP win-back", "VIP 召回"),
    "action.win_back": ("Win back", "召回"),
    "script.welcome_second_purchase": (
        "Thank them for their first order and ask how it went. Offer the second-order coupon "
        "and suggest something that goes with what they bought.",
        "感谢客户的首次购买并询问使用体验。提供第二单优惠券，并推荐与已购商品搭配的商品。"),
    "script.retention_offer": (
        "A regular customer who may be about to stop buying. Solve today's question first, "
        "ask whether anything went wrong recently, then offer the retention voucher.",
        "老客户，但有流失风险。先解决本次问题，再询问最近是否有不满意的地方，然后提供挽留优惠券。"),
    "script.cross_sell": (
        "An active, happy customer. Suggest products related to what they buy most; no "
        "discount is needed.", "活跃且满意的客户。推荐与其常购商品相关的产品，无需折扣。"),
    "script.vip_care": (
        "VIP: use the priority line, thank them for their loyalty and offer the members' "
        "exclusive offer or early access. Escalate any complaint at once.",
        "VIP 客户：走优先服务通道，感谢其长期支持，提供会员专属优惠或新品抢先购。"
        "如有投诉立即升级处理。"),
    "script.vip_win_back": (
        "A former top customer who has gone quiet. Apologise for any past problem, offer the "
        "VIP win-back package (larger coupon and free shipping) and flag them for a follow-up "
        "call.", "曾经的高价值客户，近期没有购买。为过去的问题致歉，提供 VIP 召回礼包（大额优惠券加"
                  "包邮），并标记后续回访。"),
    "script.win_back": (
        "A dormant customer. Welcome them back and offer the win-back coupon.",
        "沉睡客户。欢迎客户回来，并提供召回优惠券。"),
    "script.unknown": ("No script for this action: follow your team's playbook.",
                       "该动作暂无话术，请按团队手册处理。"),
    "error.title": ("Something went wrong", "出错了"),
    "error.not_found": ("There is no such page.", "页面不存在。"),
    "error.db": ("The database did not answer in time. Try again in a few seconds.",
                 "数据库暂时没有响应，请几秒后重试。"),
    "error.request": ("This request cannot be handled here.", "无法处理该请求。"),
    "error.internal": ("An unexpected error occurred. It has been logged.",
                       "发生了意外错误，已记录日志。"),
    "error.csrf": ("The form expired or did not come from this console. Please try again.",
                   "表单已过期或不是来自本控制台，请重试。"),
    "error.back": ("Back to lookup", "返回查询"),
}


def negotiate(cookie: str | None, accept: Iterable[str]) -> str:
    """The language to show: a valid cookie wins, then the browser's preference, then English.

    ``accept`` is the browser's language tags, most preferred first.
    """
    if cookie in LANGUAGES:
        return cookie
    for tag in accept:
        primary = tag.lower().split("-")[0]
        if primary == "zh":
            return "zh-Hans"
        if primary == "en":
            return "en"
    return DEFAULT


def translate(lang: str, key: str, **values: object) -> str:
    """The text of ``key`` in ``lang`` with ``values`` filled in; unknown keys fall back.

    A key with a known prefix but an unknown name (``action.send_gift`` from a custom policy)
    shows the name itself.
    """
    pair = MESSAGES.get(key)
    if pair is None:
        return key.partition(".")[2] or key
    text = pair[1] if lang == "zh-Hans" else pair[0]
    return text.format(**values) if values else text
