"""/docs and /redoc load nothing from outside the service: they work offline."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Every URL the page itself makes the browser fetch: scripts, styles, icons.
ASSET_REFERENCES = re.compile(r'<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]+)"')


class TestOfflineDocs:
    @pytest.mark.parametrize(
        ("page", "expected"),
        [
            ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
            ("/redoc", {"redoc.standalone.js", "favicon.png"}),
        ],
    )
    async def test_every_asset_is_served_by_the_service(
        self, api: httpx.AsyncClient, page: str, expected: set[str]
    ) -> None:
        answer = await api.get(page)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/html")
        assets = ASSET_REFERENCES.findall(answer.text)
        assert {url.rsplit("/", 1)[-1] for url in assets} == expected
        for url in assets:
            assert url.startswith("/docs/assets/"), url
            served = await api.get(url)
            assert served.status_code == 200, url
            assert len(served.content) > 0
        assert "/openapi.json" in answer.text
        # No CDN, font service or online validator anywhere on the page.
        assert "http://" not in answer.text and "https://" not in answer.text

    async def test_assets_have_their_content_types(self, api: httpx.AsyncClient) -> None:
        script = await api.get("/docs/assets/swagger-ui-bundle.js")
        style = await api.get("/docs/assets/swagger-ui.css")
        assert "javascript" in script.headers["content-type"]
        assert style.headers["content-type"].startswith("text/css")

    async def test_an_unknown_asset_is_a_404(self, api: httpx.AsyncClient) -> None:
        assert (await api.get("/docs/assets/nothing.js")).status_code == 404
