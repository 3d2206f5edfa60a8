"""Single- vs multi-label is decided once: outside the task module, no branch tests which kind of labels a run has.

The task object (`tlearn.evaluation.tasks`) owns what differs; every other module asks it. A branch that tests
the kind directly (`task == "multilabel"`, `targets.ndim == 2`, `isinstance(task, MultiLabel)`, `task is
MULTI_LABEL`, `.multilabel`) would let the two kinds drift apart again, so this test finds every such test in
the source tree and fails on any outside the task module.
"""

from __future__ import annotations

import ast
import re

import pytest

from helpers import PROJECT

PACKAGE = PROJECT / "src" / "tlearn"
TASK_MODULE = PACKAGE / "evaluation" / "tasks.py"
# A condition that names the kind of labels, however it is spelled.
KIND = re.compile(
    r"multi_?label|multiclass|single_?label|SINGLE_LABEL|MULTI_LABEL|MultiLabel|SingleLabel|task\.name"
    r"|\b(?:labels|targets|answers|train_labels)\.ndim\s*==\s*2"
)


def kind_branches(source: str, name: str) -> list[str]:
    """`name:line: condition` of every if / conditional expression / comprehension filter / match subject in
    the Python `source` whose condition names the kind of labels."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        conditions: list[ast.expr] = []
        if isinstance(node, ast.If | ast.IfExp | ast.While):
            conditions = [node.test]
        elif isinstance(node, ast.comprehension):
            conditions = list(node.ifs)
        elif isinstance(node, ast.Match):
            conditions = [node.subject]
        for condition in conditions:
            text = ast.unparse(condition)
            if KIND.search(text):
                found.append(f"{name}:{condition.lineno}: {text}")
    return found


def test_no_module_but_the_task_module_branches_on_the_kind_of_labels():
    branches = [
        branch
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != TASK_MODULE
        for branch in kind_branches(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))
    ]
    assert not branches, "decide it through the task object instead:\n" + "\n".join(branches)


@pytest.mark.parametrize(
    "source",
    [
        "if config.task == 'multilabel':\n    pass",
        "x = 1 if labels.ndim == 2 else 0",
        "if isinstance(task, MultiLabel):\n    pass",
        "rows = [r for r in rows if prepared.multilabel]",
        "if task is MULTI_LABEL:\n    pass",
    ],
)
def test_the_finder_sees_each_spelling(source):
    assert kind_branches(source, "probe.py"), source


def test_the_finder_leaves_other_branches_alone():
    source = "if config.reject == 'knn' and pixels.ndim == 2:\n    pass\nx = [r for r in rows if r.answered]"
    assert kind_branches(source, "probe.py") == []
