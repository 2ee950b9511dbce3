"""The README names every setting the services read and shows the benchmarks' own figures."""

from __future__ import annotations

from pathlib import Path

from services.bench.readme import BENCH_FILES, block, rendered
from services.kafka.topics import topic_catalog
from services.settings import TopicSettings
from services.settings_doc import all_variables

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme() -> None:
    text = README.read_text()
    missing = [v for v in all_variables() if f"`{v}`" not in text]
    assert missing == [], f"README lacks {missing}; run python -m services.settings_doc"
    assert len(all_variables()) > 50


def test_the_readmes_benchmark_figures_are_the_benchmark_json() -> None:
    text = README.read_text()
    for name in BENCH_FILES:
        assert block(name, text) == rendered(name, README.parent), (
            f"README's {name} figures differ from {BENCH_FILES[name]}; "
            "run python -m services.bench.readme"
        )


def test_the_architecture_diagram_shows_every_topic() -> None:
    text = README.read_text()
    start = text.index("```mermaid", text.index("## Architecture"))
    diagram = text[start : text.index("```", start + 3)]
    topics = TopicSettings(prefix="kbatch")
    missing = [
        spec.name
        for spec in topic_catalog(topics)
        if f"{spec.name.removeprefix(topics.prefix + '.')}<br/>" not in diagram
        and f'("{spec.name.removeprefix(topics.prefix + ".")}")' not in diagram
    ]
    assert missing == [], f"the README's architecture diagram lacks {missing}"
