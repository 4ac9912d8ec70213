"""The web UI of ``legato serve``: a page at ``/`` that reads the API (DESIGN §8).

Everything it needs ships in this package (``static/``: the page, its script and style, and the
vendored layout library under ``static/vendor/``): no CDN, no build step. :mod:`.api` declares the
few API operations the page reads beyond Maestro's paths; :mod:`.live` streams an instance's
events to an open page.
"""

from __future__ import annotations

__all__ = ["routes", "ASSETS"]

#: The files served under ``/ui/`` (name -> media type); anything else there is a 404.
ASSETS = {"app.js": "text/javascript", "dag.js": "text/javascript", "style.css": "text/css",
          "vendor/dagre.min.js": "text/javascript", "vendor/dagre.LICENSE": "text/plain",
          "vendor/diff.min.js": "text/javascript", "vendor/diff.LICENSE": "text/plain"}


def routes() -> list:
    """The Starlette routes of the page (``/``) and its assets (``/ui/…``)."""
    from importlib.resources import files

    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    static = files(__name__).joinpath("static")
    cache: dict[str, bytes] = {}

    def read(name: str) -> bytes:
        if name not in cache:
            cache[name] = static.joinpath(name).read_bytes()
        return cache[name]

    async def index(request):
        return HTMLResponse(read("index.html"), headers={"Cache-Control": "no-cache"})

    async def asset(request):
        name = request.path_params["name"]
        kind = ASSETS.get(name)
        if kind is None:
            return Response(f"no such file: /ui/{name}\n", status_code=404, media_type="text/plain")
        return Response(read(name), media_type=kind, headers={"Cache-Control": "no-cache"})

    return [Route("/", index, methods=["GET"]), Route("/ui/{name:path}", asset, methods=["GET"])]
