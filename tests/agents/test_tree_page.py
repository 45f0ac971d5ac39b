"""Search-tree pages (``langrl.agents.tree_page``): the tree as JSON, the HTML page (also
drawn by a real headless Chromium), ``MCTSConfig.tree_every`` in ``collect``, and the
training run writing the pages under ``<run_dir>/trees/``.

The browser test needs ``chromium`` on PATH (``bash scripts/setup.sh --with-browser``): it
is skipped without one, except under CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_mcts import TASK, make_agent

from langrl.agents.mcts import MCTSConfig, Node, SearchResult, iter_nodes
from langrl.agents.tree_page import (
    main,
    render_html,
    summary_line,
    tree_to_dict,
    write_tree_page,
)
from langrl.trajectory import Trajectory

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Numbers: 3 5 7 2\nTarget: 24\n"
SCRIPT_BREAKOUT = "</script><script>alert(1)</script>"
IMG_INJECTION = '<img src=x onerror="document.title=1">'


# --- a hand-built tree ---


def hand_tree() -> tuple[SearchResult, dict[str, Node]]:
    """A search tree built by hand::

    root                      N=5
    |- a   <step>3 * 5 = 15   N=4, prior .7
    |  |- a1  correct answer  N=3, terminal, reward 1     <- chosen end
    |  |- a2  SCRIPT_BREAKOUT N=0 (unvisited)
    |  `- pruned: IMG_INJECTION (unavailable_number)
    `- b   <step>7 * 2 = 14   N=1, dead, V = NaN
       `- pruned: <step>9 * 9 = 81 (unavailable_number)
    """
    state = SimpleNamespace(prompt=PROMPT)
    root = Node(state=state, visits=5, value_sum=2.0, value_estimate=0.1)
    a = Node(
        state=state, parent=root, text="<step>3 * 5 = 15</step>", prior=0.7, depth=1,
        visits=4, value_sum=3.0, value_estimate=0.5, outcome={"step_check": "ok", "reason": "step"},
    )  # fmt: skip
    b = Node(
        state=state, parent=root, text="<step>7 * 2 = 14</step>", prior=0.3, depth=1,
        visits=1, value_sum=-1.0, value_estimate=float("nan"), dead=True,
        outcome={"step_check": "ok", "reason": "step"},
    )  # fmt: skip
    a1 = Node(
        state=state, parent=a, text="<answer>3 * 5 + 7 + 2</answer>", prior=0.6, depth=2,
        terminal=True, reward=1.0, visits=3, value_sum=3.0,
        outcome={"is_correct": True, "reason": "correct"},
    )  # fmt: skip
    a2 = Node(
        state=state, parent=a, text=SCRIPT_BREAKOUT, prior=0.4, depth=2,
        outcome={"step_check": "ok", "reason": "step"},
    )  # fmt: skip
    a_pruned = Node(
        state=state, parent=a, text=IMG_INJECTION, prior=0.0, depth=2,
        outcome={"step_check": "unavailable_number", "reason": "step"},
    )  # fmt: skip
    b_pruned = Node(
        state=state, parent=b, text="<step>9 * 9 = 81</step>", prior=0.0, depth=2,
        outcome={"step_check": "unavailable_number", "reason": "step"},
    )  # fmt: skip
    root.children = [a, b]
    a.children, a.pruned = [a1, a2], [a_pruned]
    b.pruned = [b_pruned]
    trajectory = Trajectory(
        prompt_ids=[1, 2],
        completion_ids=[3, 4],
        behaviour_logprobs=[-0.1, -0.2],
        reward=1.0,
        info={
            "task": {"numbers": [3, 5, 7, 2], "target": 24},
            "text": a.text + a1.text,
            "reason": "correct",
            "is_correct": True,
            "num_tree_steps": 2,
            "finished_by_sampling": False,
        },
    )
    result = SearchResult(root, trajectory, {}, "transcript", chosen=a1)
    nodes = {"root": root, "a": a, "b": b, "a1": a1, "a2": a2, "ap": a_pruned, "bp": b_pruned}
    return result, nodes


def flat(tree: dict) -> list[dict]:
    """Every node dict of a tree dict, in page order."""
    out, stack = [], [tree["root"]]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node["children"]))
    return out


def by_text(tree: dict, text: str) -> dict:
    (node,) = [n for n in flat(tree) if n["text"] == text]
    return node


# --- the tree as JSON ---


def test_every_node_appears_once_with_pruned_steps_marked():
    result, nodes = hand_tree()
    tree = tree_to_dict(result)
    page_nodes = flat(tree)
    assert len(page_nodes) == tree["summary"]["nodes"] == 7
    assert sorted(n["id"] for n in page_nodes) == list(range(7))
    assert sorted(n["text"] for n in page_nodes) == sorted(n.text for n in nodes.values())
    pruned = {n["text"] for n in page_nodes if n["pruned"]}
    assert pruned == {IMG_INJECTION, "<step>9 * 9 = 81</step>"}
    assert tree["summary"]["pruned"] == 2
    # A pruned step is a child of the node that sampled it, after the live ones.
    a = by_text(tree, nodes["a"].text)
    assert [c["text"] for c in a["children"]] == [nodes["a1"].text, SCRIPT_BREAKOUT, IMG_INJECTION]
    assert by_text(tree, IMG_INJECTION)["verdict"] == "unavailable_number"
    assert by_text(tree, nodes["b"].text)["dead"] is True


def test_the_chosen_path_is_exactly_root_to_the_chosen_end():
    result, nodes = hand_tree()
    tree = tree_to_dict(result)
    on_path = [n["text"] for n in flat(tree) if n["on_chosen_path"]]
    assert on_path == [n.text for n in nodes["a1"].path()]
    assert tree["summary"]["chosen_depth"] == 2
    # Another end can be named; without one no node is on the path.
    other = tree_to_dict(result, nodes["a2"])
    assert [n["text"] for n in flat(other) if n["on_chosen_path"]] == [
        "",
        nodes["a"].text,
        SCRIPT_BREAKOUT,
    ]
    result.chosen = None
    assert not any(n["on_chosen_path"] for n in flat(tree_to_dict(result)))


def test_node_numbers_summary_and_json_round_trip():
    result, nodes = hand_tree()
    tree = tree_to_dict(result)
    text = json.dumps(tree, allow_nan=False)  # no NaN anywhere: V(b) was NaN
    assert json.loads(text) == tree
    root, a1 = tree["root"], by_text(tree, nodes["a1"].text)
    assert root["q"] == pytest.approx(2.0 / 5) and root["visits"] == 5
    assert a1 == {**a1, "q": 1.0, "prior": 0.6, "reward": 1.0, "terminal": True,
                  "is_correct": True, "reason": "correct", "verdict": None}  # fmt: skip
    assert by_text(tree, SCRIPT_BREAKOUT)["q"] is None  # never visited
    assert by_text(tree, nodes["b"].text)["value"] is None  # NaN -> null
    assert by_text(tree, nodes["a"].text)["is_correct"] is None  # no grade on a step
    assert tree["prompt"] == PROMPT and tree["task"] == {"numbers": [3, 5, 7, 2], "target": 24}
    assert tree["summary"] == {
        "nodes": 7, "pruned": 2, "max_depth": 2, "simulations": 5, "best_reward": 1.0,
        "chosen_reward": 1.0, "chosen_depth": 2, "finished_by_sampling": False,
    }  # fmt: skip
    assert tree_to_dict(result, task="other prompt")["prompt"] == "other prompt"
    assert summary_line(tree) == (
        "7 nodes (2 pruned), 5 simulations, best reward 1.000, chosen reward 1.000"
    )


# --- the page ---


def embedded_json(html: str) -> str:
    start = html.index('<script type="application/json" id="tree-data">')
    start = html.index(">", start) + 1
    return html[start : html.index("</script>", start)]


def test_page_is_self_contained_and_hostile_text_stays_data():
    result, _ = hand_tree()
    tree = tree_to_dict(result)
    html = render_html(tree)
    assert SCRIPT_BREAKOUT not in html and "alert(1)</script>" not in html
    assert "<img" not in html  # only its escaped form, inside the JSON
    # Exactly the page's own two scripts; the hostile "</script>" did not end the data.
    assert html.count("<script") == 2 and html.count("</script>") == 2
    assert json.loads(embedded_json(html)) == tree
    for url in ("://", "src=", "href=", "url(", "@import"):
        assert url not in html.replace(embedded_json(html), ""), url
    assert "innerHTML" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_write_tree_page_writes_json_and_html_and_main_rerenders(tmp_path, capsys):
    result, _ = hand_tree()
    tree = tree_to_dict(result)
    html_path = write_tree_page(tree, tmp_path / "trees", "search_000001")
    assert html_path == tmp_path / "trees" / "search_000001.html"
    saved = tmp_path / "trees" / "search_000001.json"
    assert json.loads(saved.read_text()) == tree
    assert html_path.read_text() == render_html(tree, title="MCTS search tree: search_000001")
    assert sorted(p.name for p in (tmp_path / "trees").iterdir()) == [
        "search_000001.html",
        "search_000001.json",
    ]  # fmt: skip  (no temp file left behind)
    out = main([str(saved), "-o", str(tmp_path / "again.html")])
    assert out == tmp_path / "again.html" and capsys.readouterr().out.strip() == str(out)
    assert embedded_json(out.read_text()) == embedded_json(html_path.read_text())
    with pytest.raises(ValueError, match="file stem"):
        write_tree_page(tree, tmp_path, "../escape")


# --- a real browser ---


class DomReader(HTMLParser):
    """The elements of a dumped DOM: (tag, attrs, own text) each, in document order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict] = []
        self._open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(element)
        if tag not in ("meta", "img", "br", "input", "link"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        if self._open:
            self._open[-1]["text"] += data

    def with_class(self, name: str) -> list[dict]:
        return [e for e in self.elements if name in e["attrs"].get("class", "").split()]


def chromium_or_skip() -> str:
    path = shutil.which("chromium")
    if path is None:
        reason = (
            "chromium is not on PATH: run `bash scripts/setup.sh --with-browser` to install "
            "it for the headless tree-page test"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def dump_dom(chromium: str, page: Path, profile: Path) -> str:
    """The DOM after the page's scripts ran, from a headless Chromium with a fresh profile
    and no network features."""
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_headless_browser_draws_the_tree(tmp_path):
    chromium = chromium_or_skip()
    result, nodes = hand_tree()
    tree = tree_to_dict(result)
    page = write_tree_page(tree, tmp_path / "trees", "hostile")
    dom = DomReader()
    dom.feed(dump_dom(chromium, page, tmp_path / "profile"))
    (body,) = [e for e in dom.elements if e["tag"] == "body"]
    assert body["attrs"].get("data-rendered") == str(tree["summary"]["nodes"]) == "7"
    drawn = [e for e in dom.elements if "data-node-id" in e["attrs"]]
    assert sorted(int(e["attrs"]["data-node-id"]) for e in drawn) == list(range(7))
    assert len(dom.with_class("chosen")) == len(nodes["a1"].path()) == 3
    assert len(dom.with_class("pruned")) == tree["summary"]["pruned"] == 2
    assert len(dom.with_class("dead")) == 1 and len(dom.with_class("correct")) == 1
    # The hostile steps are text of their nodes, not elements: no img, no third script.
    steps = [e["text"] for e in dom.with_class("step")]
    assert SCRIPT_BREAKOUT in steps and IMG_INJECTION in steps
    assert not [e for e in dom.elements if e["tag"] == "img"]
    assert len([e for e in dom.elements if e["tag"] == "script"]) == 2
    (title,) = [e for e in dom.elements if e["tag"] == "title"]
    assert title["text"] == "MCTS search tree: hostile"  # the onerror never ran
    (summary,) = [e for e in dom.elements if e["attrs"].get("id") == "summary"]
    assert "7 nodes (2 pruned)" in summary["text"] and "chosen reward 1.000" in summary["text"]


# --- tree_every in collect ---


def test_tree_every_must_not_be_negative():
    with pytest.raises(ValueError, match="MCTSConfig.tree_every"):
        MCTSConfig(tree_every=-1)
    assert MCTSConfig().tree_every == 100


def collect(agent, tasks):
    return asyncio.run(agent.collect(tasks))


def test_collect_saves_every_nth_search_counting_across_calls():
    agent, _ = make_agent(tree_every=1)
    first = collect(agent, [TASK, TASK])
    second = collect(agent, [TASK])
    assert list(first.pages) == ["search_000001", "search_000002"]
    assert list(second.pages) == ["search_000003"]
    for tree in [*first.pages.values(), *second.pages.values()]:
        json.dumps(tree, allow_nan=False)
        on_path = [n for n in flat(tree) if n["on_chosen_path"]]
        assert len(on_path) == tree["summary"]["chosen_depth"] + 1
        # The chosen path is the trajectory's: its steps start the emitted text.
        assert tree["trajectory"]["text"].startswith("".join(n["text"] for n in on_path))
        assert tree["summary"]["nodes"] >= tree["summary"]["pruned"] + 1
        assert tree["prompt"] == "Numbers: 3 5 7 2\nTarget: 24\n"

    agent, _ = make_agent(tree_every=2)
    pages = [list(collect(agent, [TASK]).pages) for _ in range(3)]
    assert pages == [["search_000001"], [], ["search_000003"]]
    agent, _ = make_agent(tree_every=0)
    assert collect(agent, [TASK, TASK]).pages == {}


def test_the_page_counts_match_the_search_tree():
    agent, _ = make_agent(tree_every=1)
    result = asyncio.run(agent.search(TASK, seed=1))
    tree = tree_to_dict(result)
    live = list(iter_nodes(result.root))
    pruned = [p for n in live for p in n.pruned]
    assert tree["summary"]["nodes"] == len(live) + len(pruned)
    assert tree["summary"]["simulations"] == result.root.visits
    assert result.chosen is not None and result.chosen.path()[0] is result.root
    assert math.isclose(tree["summary"]["chosen_reward"], result.trajectory.reward)


# --- the training run writes the pages ---


def test_the_training_run_writes_tree_pages_and_lists_them(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trainer_fakes import FakeSyncEngine

    from langrl import metrics as tags
    from langrl.tiny.model import build_random_policy
    from langrl.training import train
    from langrl.training.config import load_config

    policy = build_random_policy(tmp_path / "policy", "test")
    run_dir = tmp_path / "run"
    args = ["--total_steps", "1", "--batch_size", "2", "--eval.k", "1",
            "--eval.num_problems", "2", "--eval_every", "0", "--eval_at_start", "false",
            "--checkpoint_every", "0", "--text_every", "1", "--progress", "false",
            "--run_dir", str(run_dir), "--mcts.iterations_per_worker", "1",
            "--mcts.num_workers", "2", "--mcts.tree_every", "1"]  # fmt: skip
    config = load_config(ROOT / "configs" / "tiny_cpu.yaml", args, agent="mcts", model=str(policy))
    engine = FakeSyncEngine(policy)
    try:
        train(config, engine)
    finally:
        engine.shutdown()
    pages = sorted((run_dir / "trees").glob("*.html"))
    assert pages and all(p.name.startswith("step_000000_search_") for p in pages)
    for page in pages:
        tree = json.loads(page.with_suffix(".json").read_text())
        assert embedded_json(page.read_text()) == json.dumps(tree, allow_nan=False).replace(
            "<", "\\u003c"
        ).replace(">", "\\u003e").replace("&", "\\u0026")
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    (tag,) = [t for t in acc.Tags()["tensors"] if t.startswith(tags.TEXT_TREES)]
    (event,) = acc.Tensors(tag)
    text = event.tensor_proto.string_val[0].decode()
    for page in pages:
        assert f"trees/{page.name}: " in text
    assert "best reward" in text and "chosen reward" in text


def test_a_page_that_cannot_be_written_is_a_warning(tmp_path, caplog):
    from langrl.training.run import TrainingRun

    (tmp_path / "trees").write_text("a file where the directory should be")
    result, _ = hand_tree()
    run = SimpleNamespace(run_dir=tmp_path, step=4, _page_lines=[])
    pages = {"search_000001": tree_to_dict(result), "bad": {"root": {"x": float("nan")}}}
    with caplog.at_level(logging.WARNING, logger="langrl.training.run"):
        TrainingRun._write_pages(run, pages)
    assert run._page_lines == []
    assert "could not write tree page step_000004_search_000001" in caplog.text
    (tmp_path / "trees").unlink()
    TrainingRun._write_pages(run, pages)  # the NaN page fails alone
    assert run._page_lines == [
        "trees/step_000004_search_000001.html: "
        "7 nodes (2 pruned), 5 simulations, best reward 1.000, chosen reward 1.000"
    ]
    assert (tmp_path / "trees" / "step_000004_search_000001.html").is_file()
    assert not (tmp_path / "trees" / "step_000004_bad.json").exists()
