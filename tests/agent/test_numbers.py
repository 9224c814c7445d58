"""Numbers and heights as buyers and speech-to-text write them."""

import pytest

from agent.answer.numbers import find_numbers, parse_height_cm, words_to_digits


@pytest.mark.parametrize(
    "text, lang, expected",
    [
        ("one zero zero two three", "en", "10023"),
        ("one oh oh two four", "en", "10024"),
        ("ten thousand and twenty three", "en", "10023"),
        ("ten zero twenty three", "en", "10023"),
        ("order 10,023", "en", "10023"),
        ("1 0 0 2 5", "en", "10025"),
        ("10 023", "en", "10023"),
        ("um zero zero dois três", "pt", "10023"),
        ("dez mil e vinte e cinco", "pt", "10025"),
        ("uno cero cero dos cuatro", "es", "10024"),
        ("diez mil veintitrés", "es", "10023"),
        ("one hundred fifty nine", "en", "159"),
        ("custa 400 e vinte dólares", "pt", "420"),
    ],
)
def test_spoken_numbers_become_digits(text, lang, expected):
    assert expected in find_numbers(text, lang)


def test_portuguese_dos_is_not_two():
    assert find_numbers("o envio dos produtos", "pt") == []
    assert words_to_digits("envio dos produtos", "pt") == "envio dos produtos"


@pytest.mark.parametrize(
    "text, lang, cm",
    [
        ("I am 168 cm tall", "en", 168),
        ("I'm 1.72 m", "en", 172),
        ("I am five foot six", "en", 168),
        ("I'm 5'2\"", "en", 157),
        ("5 feet 10 inches", "en", 178),
        ("eu tenho 1,65 de altura", "pt", 165),
        ("tenho um metro e setenta", "pt", 170),
        ("mido un metro sesenta y ocho", "es", 168),
        ("mido 158 centímetros", "es", 158),
    ],
)
def test_heights(text, lang, cm):
    assert round(parse_height_cm(text, lang)) == cm


def test_no_height_in_a_price_question():
    assert parse_height_cm("how much is the bag, 159 dollars?", "en") is None
