from tests.factories import api, api_app

__all__ = ["api", "api_app"]
