"""The images' HEALTHCHECK: a server (textft service, textft serve) is healthy while GET /health
answers 200; a container that trains or runs a worker has no port to probe and is healthy while it runs."""

import os
import sys
import urllib.request

try:
    with open(os.environ.get("TEXTFT_ROLE_FILE", "/tmp/textft-role")) as f:
        role = f.read().strip()
except OSError:
    role = ""
if role not in ("service", "serve"):
    sys.exit(0)
url = f"http://127.0.0.1:{os.environ.get('TEXTFT_PORT', '8080')}/health"
try:
    with urllib.request.urlopen(url, timeout=4) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except Exception as e:  # refused, timed out, 503 while stopping: all unhealthy
    print(f"{url}: {e}", file=sys.stderr)
    sys.exit(1)
