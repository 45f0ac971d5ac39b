"""A search tree as JSON and as one self-contained HTML page, to see what MCTS searched.

``tree_to_dict`` turns a finished search (``langrl.agents.mcts.SearchResult``) into plain
JSON: a summary (nodes, depth, simulations, best terminal reward, chosen reward) and the
tree as nested nodes, each with its step text, visits, Q, prior, reward, the env's verdict
and reason, V(s), and flags: ``pruned`` (a sampled step whose env check failed, kept in the
parent's ``Node.pruned``), ``dead``, ``terminal``, ``is_correct`` and ``on_chosen_path``
(root to the last tree node of the emitted trajectory). ``render_html`` makes one page of
it: inline CSS and JS, no URL to fetch, the JSON embedded in the page, drawn as a nested
collapsible list with the chosen path highlighted. ``write_tree_page`` writes both files.

The MCTS agent puts the tree of every ``MCTSConfig.tree_every``-th search into its
``RolloutBatch.pages``, and the training run writes them under ``<run_dir>/trees/``. A
saved JSON is re-rendered with::

    python -m langrl.agents.tree_page runs/<run>/trees/step_000000_search_000001.json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mcts imports this module: no runtime import back
    from langrl.agents.mcts import Node, SearchResult

__all__ = ["main", "render_html", "summary_line", "tree_to_dict", "write_tree_page"]


# --- the tree as JSON ---


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when missing or not finite (JSON has no NaN)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value`` (the env's task dict): non-finite floats become None,
    anything JSON cannot hold becomes its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return _finite(value)
    return str(value)


def _node_dict(
    node: Node, pruned: bool, chosen_path: set[int], counter: list[int]
) -> dict[str, Any]:
    """One node and its subtree; ``counter`` hands out ids in page order (depth first,
    live children before pruned ones)."""
    node_id = counter[0]
    counter[0] += 1
    outcome = node.outcome or {}
    is_correct = outcome.get("is_correct")
    out: dict[str, Any] = {
        "id": node_id,
        "depth": node.depth,
        "text": node.text,
        "visits": node.visits,
        "q": _finite(node.value_sum / node.visits) if node.visits else None,
        "prior": _finite(node.prior),
        "reward": _finite(node.reward),
        "terminal": bool(node.terminal),
        "is_correct": None if is_correct is None else bool(is_correct),
        "verdict": _text(outcome.get("step_check")),
        "reason": _text(outcome.get("reason")),
        "value": _finite(node.value_estimate),
        "num_samples": node.num_samples,
        "pruned": pruned,
        "dead": bool(node.dead),
        "on_chosen_path": id(node) in chosen_path,
    }
    # Recursion is fine: a tree is as deep as the env's step limit, a few dozen at most.
    out["children"] = [_node_dict(c, False, chosen_path, counter) for c in node.children] + [
        _node_dict(c, True, chosen_path, counter) for c in node.pruned
    ]
    return out


def _walk(tree: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every node dict of ``tree["root"]``, depth first."""
    nodes, stack = [], [tree["root"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(reversed(node.get("children", [])))
    return nodes


def tree_to_dict(
    result: SearchResult, chosen: Node | None = None, *, task: str = ""
) -> dict[str, Any]:
    """One search as a JSON-able dict (``json.dumps(..., allow_nan=False)`` accepts it).

    Keys: ``prompt`` (``task``, else the root snapshot's ``prompt`` where the env's state
    has one), ``task`` (the env's task dict from the trajectory), ``summary`` (``nodes`` on
    the page, pruned steps included; ``pruned``; ``max_depth``; ``simulations`` = root
    visits; ``best_reward`` of a terminal tree node or None; ``chosen_reward``, the emitted
    trajectory's; ``chosen_depth``; ``finished_by_sampling``), ``trajectory`` (the emitted
    text and its grade) and ``root``, the nested nodes (see the module docstring; ``q`` is
    None for an unvisited node, pruned steps are children with ``pruned: true``).

    ``chosen``: the end of the chosen path; default ``result.chosen``, the last tree node
    of the trajectory the search emitted. Without one no node is on the chosen path.
    """
    chosen = chosen if chosen is not None else result.chosen
    chosen_path = {id(n) for n in chosen.path()} if chosen is not None else set()
    root = _node_dict(result.root, False, chosen_path, [0])
    tree: dict[str, Any] = {"root": root}
    nodes = _walk(tree)
    terminal_rewards = [
        n["reward"] for n in nodes if n["terminal"] and not n["pruned"] and n["reward"] is not None
    ]
    info = result.trajectory.info
    prompt = task or getattr(result.root.state, "prompt", "") or ""
    return {
        "prompt": str(prompt),
        "task": _jsonable(info.get("task")),
        "summary": {
            "nodes": len(nodes),
            "pruned": sum(n["pruned"] for n in nodes),
            "max_depth": max(n["depth"] for n in nodes),
            "simulations": result.root.visits,
            "best_reward": max(terminal_rewards) if terminal_rewards else None,
            "chosen_reward": _finite(result.trajectory.reward),
            "chosen_depth": chosen.depth if chosen is not None else None,
            "finished_by_sampling": bool(info.get("finished_by_sampling", False)),
        },
        "trajectory": {
            "text": _text(info.get("text")),
            "reward": _finite(result.trajectory.reward),
            "reason": _text(info.get("reason")),
            "is_correct": bool(info.get("is_correct", False)),
        },
        "root": root,
    }


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_line(tree: Mapping[str, Any]) -> str:
    """One line about a tree dict: nodes, best terminal reward, chosen reward."""
    s = tree.get("summary", {})
    return (
        f"{s.get('nodes', '?')} nodes ({s.get('pruned', 0)} pruned), "
        f"{s.get('simulations', '?')} simulations, best reward {_fmt(s.get('best_reward'))}, "
        f"chosen reward {_fmt(s.get('chosen_reward'))}"
    )


# --- the page ---

# Escapes that keep JSON inside <script>: "</script>" or "<!--" in a step's text cannot
# end the block, as "<" never appears raw; ">" and "&" too, for good measure. (json.dumps
# writes ASCII, so no other character needs care.)
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
header { border-bottom: 1px solid #ccc; margin-bottom: 1em; }
pre.prompt, pre.trajectory { background: #f6f6f6; padding: .5em; white-space: pre-wrap;
  max-height: 12em; overflow: auto; }
ul.tree, ul.tree ul { list-style: none; padding-left: 1.2em; margin: 0;
  border-left: 1px dotted #bbb; }
li.node > details > summary, li.node > div.leaf { padding: 1px 4px; border-radius: 3px; }
li.node > div.leaf { padding-left: 1.1em; }
.step { font-family: ui-monospace, monospace; white-space: pre-wrap; }
.stats { color: #666; font-size: 12px; margin-left: .6em; }
.flag { font-size: 11px; padding: 0 4px; margin-left: .4em; border-radius: 3px;
  background: #eee; }
li.chosen > details > summary, li.chosen > div.leaf { background: #fff3b0;
  outline: 1px solid #e0c200; }
li.pruned > div.leaf, li.pruned > details > summary { color: #999;
  text-decoration: line-through; }
li.dead > details > summary, li.dead > div.leaf { color: #a33; }
li.correct > details > summary .step, li.correct > div.leaf .step { color: #0a7a2a;
  font-weight: bold; }
.legend span { margin-right: 1em; padding: 0 4px; }
.legend .l-chosen { background: #fff3b0; } .legend .l-pruned { color: #999;
  text-decoration: line-through; } .legend .l-dead { color: #a33; }
.legend .l-correct { color: #0a7a2a; font-weight: bold; }
"""

# Model text only ever reaches the page through textContent: a step is data, never markup.
_JS = """
(function () {
  "use strict";
  var tree = JSON.parse(document.getElementById("tree-data").textContent);
  var count = 0;
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function num(x) { return x === null || x === undefined ? "-" : Number(x).toFixed(3); }
  function label(node) {
    var frag = document.createDocumentFragment();
    var text = node.depth === 0 ? "(root)" : node.text;
    frag.appendChild(el("span", "step", text));
    var stats = "N=" + node.visits + " Q=" + num(node.q) + " P=" + num(node.prior) +
      " r=" + num(node.reward) + " V=" + num(node.value);
    if (node.num_samples > 1) stats += " x" + node.num_samples;
    frag.appendChild(el("span", "stats", stats));
    if (node.verdict) frag.appendChild(el("span", "flag verdict", node.verdict));
    if (node.terminal) frag.appendChild(el("span", "flag", "end: " + (node.reason || "")));
    if (node.pruned) frag.appendChild(el("span", "flag", "pruned"));
    if (node.dead) frag.appendChild(el("span", "flag", "dead"));
    return frag;
  }
  function render(node) {
    count += 1;
    var li = el("li", "node");
    li.dataset.nodeId = String(node.id);
    if (node.on_chosen_path) li.classList.add("chosen");
    if (node.pruned) li.classList.add("pruned");
    if (node.dead) li.classList.add("dead");
    if (node.terminal && node.is_correct) li.classList.add("correct");
    var kids = node.children || [];
    if (kids.length) {
      var details = el("details");
      // The chosen path (and the root) start open; the rest of the tree is a click away.
      details.open = node.depth === 0 || !!node.on_chosen_path;
      var summary = el("summary");
      summary.appendChild(label(node));
      details.appendChild(summary);
      var ul = el("ul");
      kids.forEach(function (k) { ul.appendChild(render(k)); });
      details.appendChild(ul);
      li.appendChild(details);
    } else {
      var leaf = el("div", "leaf");
      leaf.appendChild(label(node));
      li.appendChild(leaf);
    }
    return li;
  }
  var s = tree.summary || {};
  document.getElementById("summary").textContent =
    s.nodes + " nodes (" + s.pruned + " pruned), max depth " + s.max_depth + ", " +
    s.simulations + " simulations; best terminal reward " + num(s.best_reward) +
    ", chosen reward " + num(s.chosen_reward) +
    (s.finished_by_sampling ? " (chosen path finished by a policy sample)" : "");
  document.getElementById("prompt").textContent = tree.prompt || "";
  var t = tree.trajectory || {};
  document.getElementById("trajectory").textContent = (t.text || "") +
    "\\n[reward " + num(t.reward) + ", " + (t.reason || "") + "]";
  var root = el("ul", "tree");
  root.appendChild(render(tree.root));
  document.getElementById("tree").appendChild(root);
  function setAll(open) {
    document.querySelectorAll("#tree details").forEach(function (d) { d.open = open; });
  }
  document.getElementById("expand").addEventListener("click", function () { setAll(true); });
  document.getElementById("collapse").addEventListener("click", function () { setAll(false); });
  document.body.dataset.rendered = String(count);
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<p id="summary"></p>
<details><summary>Prompt</summary><pre class="prompt" id="prompt"></pre></details>
<details><summary>Emitted trajectory</summary><pre class="trajectory" id="trajectory"></pre>
</details>
<p class="legend"><span class="l-chosen">chosen path</span><span class="l-correct">correct
end</span><span class="l-pruned">pruned step</span><span class="l-dead">dead</span>
N visits, Q mean value, P prior, r step reward, V value head
<button id="expand" type="button">expand all</button>
<button id="collapse" type="button">collapse all</button></p>
</header>
<div id="tree"></div>
<script type="application/json" id="tree-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def render_html(tree: Mapping[str, Any], title: str = "MCTS search tree") -> str:
    """One self-contained HTML page of a ``tree_to_dict`` dict: inline CSS and JS and no
    URL, so it opens from disk anywhere. The JSON sits in a ``<script
    type="application/json">`` block with ``<``, ``>`` and ``&`` escaped, so no step text
    can end it; the script draws the tree from it with ``textContent`` only. A
    Content-Security-Policy allows that one script (by hash) and inline styles, nothing
    else: no network, no other script. Each node is an ``li`` with ``data-node-id`` and the
    classes ``chosen``, ``pruned``, ``dead`` and ``correct`` (a terminal correct step);
    once drawn, ``body`` has ``data-rendered`` = the number of nodes drawn."""
    data = json.dumps(tree, allow_nan=False)
    for raw, escaped in _SCRIPT_ESCAPES.items():
        data = data.replace(raw, escaped)
    # The browser hashes the script's text exactly as it sits between the tags.
    digest = base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()
    csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    safe_title = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _PAGE.format(csp=csp, title=safe_title, css=_CSS, data=data, js=_JS)


# --- files ---


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a reader (or a crash) never sees
    half a page."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tree_page(tree: Mapping[str, Any], directory: Path, name: str) -> Path:
    """Write ``{name}.json`` and ``{name}.html`` of ``tree`` into ``directory`` (created),
    each atomically; return the HTML path. ``name`` is a file stem, not a path."""
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"write_tree_page: name must be a file stem, got {name!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    html = render_html(tree, title=f"MCTS search tree: {name}")  # fails before any write
    _atomic_write(directory / f"{name}.json", json.dumps(tree, allow_nan=False, indent=1))
    html_path = directory / f"{name}.html"
    _atomic_write(html_path, html)
    return html_path


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m langrl.agents.tree_page TREE.json [-o OUT.html]``: re-render a saved tree
    (default output: the JSON's path with ``.html``); prints and returns the page's path."""
    parser = argparse.ArgumentParser(
        prog="python -m langrl.agents.tree_page", description=main.__doc__
    )
    parser.add_argument("tree", type=Path, help="a tree JSON written by write_tree_page")
    parser.add_argument("-o", "--output", type=Path, default=None, help="the HTML to write")
    args = parser.parse_args(argv)
    tree = json.loads(args.tree.read_text(encoding="utf-8"))
    out = args.output or args.tree.with_suffix(".html")
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, render_html(tree, title=f"MCTS search tree: {args.tree.stem}"))
    print(out)
    return out


if __name__ == "__main__":
    main()
