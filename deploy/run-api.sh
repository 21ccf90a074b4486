#!/bin/bash
# The API on Lambda: the Lambda Web Adapter layer forwards requests to this server,
# which starts once per container (so its database pool lives across invocations).
exec python3 -m fanout serve --host 127.0.0.1 --port "${PORT:-8080}"
