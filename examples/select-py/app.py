"""The select guest in Python: the same policy as examples/select-guest, to
show the contract is language-neutral. Others see `id`, `name` and `color`;
every other export keeps the built-in behaviour.

Build with (from the repository root):
    pip install componentize-py
    componentize-py -d wit -w plugin componentize -p examples/select-py app -o select_py.wasm
"""

import json
from urllib.parse import parse_qsl

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import presence, types

PRESENCE_PREFIX = "__presence:"


class Guest(exports.Guest):
    def authenticate(self, request: types.UpgradeRequest) -> str:
        return json.dumps(dict(parse_qsl(request.query)))

    def authorize(self, conn: types.Connection, topic: str, action: types.Action) -> None:
        return None

    def select(self, user_data: str) -> str:
        try:
            user = json.loads(user_data)
        except ValueError as error:
            raise Err(f"user data is not JSON: {error}")
        return json.dumps({field: user.get(field) for field in ("id", "name", "color")})

    def on_subscribe(self, conn: types.Connection, topic: str) -> None:
        if topic.startswith(PRESENCE_PREFIX):
            presence.sync(conn.id, topic[len(PRESENCE_PREFIX):])
        elif not topic.startswith("__"):
            presence.join(conn.id, topic)

    def on_unsubscribe(self, conn: types.Connection, topic: str) -> None:
        if topic.startswith(PRESENCE_PREFIX):
            presence.unsync(conn.id, topic[len(PRESENCE_PREFIX):])
        elif not topic.startswith("__"):
            presence.leave(conn.id, topic)

    def on_close(self, conn: types.Connection) -> None:
        presence.leave(conn.id, None)
