"""Accuracy of the grounded engine on the shop's question set (>= 60 questions, en/pt/es)."""

from collections import Counter

from agent.answer.evaluate import evaluate, load_questions


def test_question_set_accuracy(engine, capsys):
    questions = load_questions()
    assert len(questions) >= 60
    assert set(Counter(q["lang"] for q in questions)) == {"en", "pt", "es"}
    accuracy, results = evaluate(engine, questions)
    by_lang = {
        lang: sum(r.correct for r in results if r.question["lang"] == lang)
        / sum(1 for r in results if r.question["lang"] == lang)
        for lang in ("en", "pt", "es")
    }
    intents = sum(r.answer.intent == r.question.get("intent") for r in results) / len(results)
    with capsys.disabled():
        print(
            f"\nanswer engine accuracy {accuracy:.3f} on {len(results)} questions "
            f"(en {by_lang['en']:.2f}, pt {by_lang['pt']:.2f}, es {by_lang['es']:.2f}); "
            f"intent agreement {intents:.2f}"
        )
    wrong = [(r.question["q"], r.answer.text, r.missing) for r in results if not r.correct]
    assert accuracy >= 0.8, wrong
    assert min(by_lang.values()) >= 0.8, by_lang
