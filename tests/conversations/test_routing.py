import pytest

from app.conversations.routing import chosen_option, numbered_list, snippet


class TestChosenOption:
    @pytest.mark.parametrize(
        ("text", "number"),
        [
            ("2", 2),
            ("2 please", 2),
            ("it's 3.", 3),
            ("option #10", 10),
            ("২", 2),
            ("२ कृपया", 2),
            ("1", 1),
            ("0", 0),
        ],
    )
    def test_the_first_number_surrounding_text_ignored(self, text: str, number: int) -> None:
        assert chosen_option(text) == number

    @pytest.mark.parametrize("text", ["", "the second one", "yes", "12345"])
    def test_no_usable_number(self, text: str) -> None:
        assert chosen_option(text) is None


class TestNumberedList:
    def test_new_topic_first_then_each_subject_shortened(self) -> None:
        long = "Your lab results from the visit on 12 December are ready to collect"
        assert numbered_list("New topic", ["Visit on Tuesday", long]) == (
            "1. New topic\n2. Visit on Tuesday\n3. Your lab results from the visit on 12 D…"
        )

    def test_snippet_flattens_lines(self) -> None:
        assert snippet("a\n  b\tc") == "a b c"
