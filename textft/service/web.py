"""The web page at ``/``: static HTML, CSS and JavaScript shipped in the package (``static/``).

The script is ES modules under ``static/js/`` (``main.js`` imports the rest), served as they are
written: no build step. A module script runs only when served with a JavaScript media type (and
``nosniff`` makes browsers hold to that), so ``.js`` is always ``text/javascript``, whatever the
machine's MIME table says.

The page is a client of the same ``/v1`` API as curl: it holds no secret of its own and the
files are served without a key; the key the user signs in with stays in the browser's
``sessionStorage`` and goes out as the bearer header. Nothing is loaded from elsewhere, so the
page works on a machine without internet access, and the Content-Security-Policy says so.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).with_name("static")

# Reports are embedded from their own HTML (inline styles, plots as data: images) in a sandboxed
# frame without scripts; everything else comes from this origin.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:;"
       " frame-src 'self' blob: data:; connect-src 'self'; object-src 'none'; base-uri 'none';"
       " form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


JAVASCRIPT = "text/javascript; charset=utf-8"


class _Static(StaticFiles):
    async def get_response(self, path, scope):
        response = await super().get_response(path, scope)
        # no-cache: revalidated (ETag) on each load, so the modules of one version never mix with another's
        response.headers.update({"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
        if path.endswith(".js") and "content-type" in response.headers:
            response.headers["content-type"] = JAVASCRIPT
        return response


def mount_page(app: FastAPI) -> None:
    """``GET /`` (the page) and ``/static/*`` (its script modules, style sheet and icon)."""

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)

    app.mount("/static", _Static(directory=STATIC), name="static")
