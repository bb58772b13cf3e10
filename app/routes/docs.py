"""The docs pages, Swagger UI at /docs and ReDoc at /redoc, with their scripts and styles
served by this service rather than a CDN, so that the pages work without internet.

This is FastAPI's "self-hosting JavaScript and CSS for docs": the app is made with
docs_url=None and redoc_url=None, and these routes stand in for FastAPI's own. The
assets are the copies of swagger-ui-dist and ReDoc that the fastapi-offline package
ships (its static/ folder); only the folder is used, not its app factory, so that
create_app keeps building the app.
"""

from fastapi import APIRouter, Request, status
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
# swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png.
ASSETS_PACKAGE = ("fastapi_offline", "static")


class DocsAssets(StaticFiles):
    """StaticFiles, with its 405 answered here, in the app's JSON shape: StaticFiles
    answers GET and HEAD only, and the app's 405 handler (app/errors.py), which lists
    the methods of the routes at a path, cannot see inside a mount (it sent `Allow: `)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if scope["method"] not in {"GET", "HEAD"}:
            return JSONResponse(
                {"detail": "Method Not Allowed"},
                status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
                headers={"Allow": "GET, HEAD"},
            )
        return await super().get_response(path, scope)


# Pages for people, not part of the API: they stay out of the OpenAPI document.
router = APIRouter(tags=["docs"], include_in_schema=False)
router.mount(ASSETS_URL, DocsAssets(packages=[ASSETS_PACKAGE]), name="docs-assets")


def _root_path(request: Request) -> str:
    """The prefix a proxy serves the app under (uvicorn --root-path), as FastAPI's pages use it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI: try the API in the browser."""
    app = request.app
    root = _root_path(request)
    return get_swagger_ui_html(
        openapi_url=root + app.openapi_url,
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        # Where the Authorize dialog's OAuth2 flows that leave the page come back to;
        # the password flow of built-in accounts posts its form from the page itself.
        oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
        init_oauth=app.swagger_ui_init_oauth,
        swagger_ui_parameters=app.swagger_ui_parameters,
    )


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    """The page Swagger UI's OAuth2 flows return to."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_URL)
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc: the API reference."""
    app = request.app
    root = _root_path(request)
    return get_redoc_html(
        openapi_url=root + app.openapi_url,
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        # Google's fonts are a CDN too; ReDoc falls back to the system's fonts.
        with_google_fonts=False,
    )
