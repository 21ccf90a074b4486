"""The batch endpoint's answer, written without its model, is the model's JSON."""

from __future__ import annotations

import orjson

from fanout.api import schemas
from fanout.api.routes.batch import _answer, _refused, _result
from fanout.stages.publish import IdempotencyConflict, Published


def test_the_answer_is_what_the_response_model_writes() -> None:
    done = [
        _result(Published(7, created=True), ("body", "items", 0)),
        _result(Published(3, created=False), ("body", "items", 1)),
        _result(IdempotencyConflict(), ("body", "items", 2)),
        _refused([{"type": "missing", "loc": ["body", "items", 3, "user_id"], "msg": 'Ünïcode "'}]),
    ]
    model = schemas.NotificationBatchAccepted(
        accepted=2,
        refused=2,
        results=[schemas.BatchItemResult.model_validate(r, from_attributes=True) for r in done],
    )
    assert orjson.loads(_answer(2, 2, done)) == orjson.loads(model.model_dump_json())
    assert _answer(2, 2, done) == orjson.dumps(orjson.loads(model.model_dump_json()))
