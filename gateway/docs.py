"""/docs: Swagger UI from the swagger-ui-bundle package, served locally (no CDN)."""

import mimetypes
from functools import lru_cache
from pathlib import Path

from swagger_ui_bundle import swagger_ui_path

DOCS_SPEC_PATH = "/docs/openapi.json"
ASSETS = frozenset(
    {
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "favicon-32x32.png",
        "favicon-16x16.png",
    }
)

PAGE = b"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Folio API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""

# A separate file rather than an inline script, so a strict CSP can still allow the page.
INIT_JS = f"""window.ui = SwaggerUIBundle({{
  url: "{DOCS_SPEC_PATH}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
}});
""".encode()


@lru_cache(maxsize=len(ASSETS))
def asset(name: str) -> tuple[bytes, str] | None:
    """The bytes and media type of a bundled asset, or None when there is no such asset."""
    if name not in ASSETS:
        return None
    path = Path(str(swagger_ui_path)) / name
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media_type.startswith("text/") or media_type.endswith("javascript"):
        media_type += "; charset=utf-8"
    return path.read_bytes(), media_type
