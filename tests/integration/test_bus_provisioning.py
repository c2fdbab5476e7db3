from support.servers import Infra
from tollgate_contracts import streams, subjects
from tollgate_contracts.events import UsageRecorded, utcnow
from tollgate_platform import bus


async def test_provisioning_is_idempotent_and_dedups_by_request_id(clean_bus: Infra) -> None:
    nc = await bus.connect(clean_bus.nats_url, "t")
    js = nc.jetstream()
    await bus.provision(js)  # a second run changes nothing that matters
    info = await js.stream_info(streams.USAGE.name)
    assert info.config.duplicate_window == streams.USAGE.duplicate_window_s
    event = UsageRecorded(
        event_id="req_1", customer_id="cus_a", key_id="k", endpoint="/v1/chat/completions", model="gpt-4o",
        requested_model="gpt-4o", input_tokens=1, output_tokens=2, cost_nanos=10, list_price_nanos=10,
        price_book_version="v", started_at=utcnow(),
    )
    subject = subjects.for_customer(subjects.USAGE_RECORDED, "cus_a")
    first = await bus.publish_event(js, subject, event)
    again = await bus.publish_event(js, subject, event)
    assert not first.duplicate and again.duplicate
    assert (await js.stream_info(streams.USAGE.name)).state.messages == 1
    await nc.close()
