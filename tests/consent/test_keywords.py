import pytest

from app.config import Settings
from app.consent.keywords import Keyword, keyword_of

SETTINGS = Settings(app_env="test")


class TestKeywordOf:
    @pytest.mark.parametrize(
        "text",
        [
            "STOP",
            "stop",
            " Stop! ",
            "STOPALL",
            "unsubscribe",
            "Cancel.",
            "END",
            "quit",
            "বন্ধ",
            "বন্ধ।",
            "বাতিল",
            "रोकें",
            "बंद",
            "“रद्द”",
        ],
    )
    def test_stop_words_in_english_bengali_and_hindi(self, text: str) -> None:
        assert keyword_of(text, SETTINGS) is Keyword.STOP

    @pytest.mark.parametrize("text", ["START", "unstop", "Yes", "শুরু", "চালু", "शुरू", "हाँ"])
    def test_start_words(self, text: str) -> None:
        assert keyword_of(text, SETTINGS) is Keyword.START

    @pytest.mark.parametrize("text", ["HELP", "help?", "সাহায্য", "मदद"])
    def test_help_words(self, text: str) -> None:
        assert keyword_of(text, SETTINGS) is Keyword.HELP

    @pytest.mark.parametrize(
        "text", ["", "   ", "please stop", "I can't come Tuesday", "stopp", "2 please"]
    )
    def test_anything_else_is_no_keyword(self, text: str) -> None:
        assert keyword_of(text, SETTINGS) is None

    def test_the_words_are_configurable(self) -> None:
        settings = Settings(app_env="test", consent_stop_keywords="ARRET, halt")
        assert keyword_of("arrêt", settings) is None
        assert keyword_of("ARRET", settings) is Keyword.STOP
        assert keyword_of("Halt", settings) is Keyword.STOP
        assert keyword_of("STOP", settings) is None
