"""Service-class settings: the default set, files, flags and how a request names its class."""

from __future__ import annotations

import pytest

from llmserve.service_classes import DEFAULT_SERVICE_CLASSES, ServiceClass, ServiceClasses

TOML = """
default = "standard"
[[classes]]
name = "critical"
ttft = "150ms"
e2e = "1s"
share = "50%"
[[classes]]
name = "standard"
ttft = 800
share = 0.3
[[classes]]
name = "batch"
ttft = "none"
share = 0.2
"""

YAML = """
default: standard
classes:
  - {name: critical, ttft: 150ms, e2e: 1s, share: 50%}
  - {name: standard, ttft: 800, share: 0.3}
  - {name: batch, ttft: none, share: 0.2}
"""


def test_the_default_set_mirrors_the_usual_tiers():
    classes = DEFAULT_SERVICE_CLASSES
    assert classes.names == ["p0", "p1", "p2", "p3"]
    assert [(c.ttft_target, c.e2e_target, c.share) for c in classes.classes] == [
        (0.2, 1.0, 0.4), (0.5, 3.0, 0.3), (1.0, 10.0, 0.2), (None, None, 0.1)]
    assert classes.default == "p3"


@pytest.mark.parametrize("value, rank", [(0, 0), (3, 3), ("p1", 1), ("2", 2), (" p2 ", 2), (None, 3)])
def test_a_request_names_its_class_by_rank_or_name(value, rank):
    assert DEFAULT_SERVICE_CLASSES.rank(value) == rank


@pytest.mark.parametrize("value", [4, -1, "p4", "urgent", True, 1.0, "-1"])
def test_an_unknown_class_is_refused(value):
    with pytest.raises(ValueError, match="priority|service class"):
        DEFAULT_SERVICE_CLASSES.rank(value)


@pytest.mark.parametrize("suffix, text", [(".toml", TOML), (".yaml", YAML)])
def test_classes_load_from_toml_or_yaml(tmp_path, suffix, text):
    path = tmp_path / f"classes{suffix}"
    path.write_text(text)
    classes = ServiceClasses.from_file(path)
    assert classes.classes == (ServiceClass("critical", 0.15, 1.0, 0.5), ServiceClass("standard", 0.8, None, 0.3),
                               ServiceClass("batch", None, None, 0.2))
    assert classes.default_rank == 1


def test_flags_edit_a_class_or_add_one_below_the_rest():
    classes = DEFAULT_SERVICE_CLASSES.with_spec("p0:ttft=1s,e2e=5s").with_spec("scavenger:share=0.05")
    assert classes[0] == ServiceClass("p0", 1.0, 5.0, 0.4, "interactive, critical (payments)")
    assert classes.names[-1] == "scavenger" and classes[4].share == 0.05
    assert classes.with_default("p1").default_rank == 1


def test_shares_are_owed_in_proportion_among_busy_classes():
    classes = DEFAULT_SERVICE_CLASSES
    assert classes.guaranteed_fraction(3, [0, 1, 2, 3]) == pytest.approx(0.1)
    assert classes.guaranteed_fraction(3, [0]) == pytest.approx(0.2)
    assert classes.guaranteed_fraction(0, []) == pytest.approx(1.0)


@pytest.mark.parametrize("spec", ["p0", "p0:", "p0:ttft", "p0:speed=1", "p0:share=2", "p0:ttft=-5ms",
                                  "p0:share=lots", "7:share=0.1"])
def test_bad_flags_say_what_is_wrong(spec):
    with pytest.raises(ValueError):
        DEFAULT_SERVICE_CLASSES.with_spec(spec)


@pytest.mark.parametrize("text, message", [
    ('default = "gold"\n[[classes]]\nname = "p0"\n', "default service class"),
    ("[[classes]]\nname = 'a'\n[[classes]]\nname = 'a'\n", "unique"),
    ("classes = []\n", "non-empty"),
    ("[[classes]]\nname = 'a'\nttft = 'soon'\n", "duration"),
    ("colour = 'red'\n[[classes]]\nname = 'a'\n", "unknown"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "classes.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        ServiceClasses.from_file(path)
    assert "classes.toml" in str(info.value)


def test_only_toml_and_yaml_files_are_read(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="toml"):
        ServiceClasses.from_file(path)
