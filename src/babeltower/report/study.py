"""The Babel Tower experiment's report: ``report.html``, ``summary.md`` and PNG figures
from the experiment's ``results.json`` dict.

The rooms: ``report.sections`` (one function per section), ``report.tables`` (the rows,
shared by HTML and Markdown), ``report.prose`` (the words that read the numbers,
including where they agree or disagree with the paper), ``report.markdown``
(``summary.md``), ``report.figures`` (plotting only), ``report.html`` (rendering).
"""

from __future__ import annotations

from pathlib import Path

from babeltower.io import atomic_write_text
from babeltower.report.html import Section, render
from babeltower.report.markdown import markdown_summary
from babeltower.report.prose import paper_text
from babeltower.report.sections import (algorithm1_section, answer_section, comparison_section,
                                        knowledge_section, mixtures_section, neurons_section,
                                        provenance_section, replay_section, setup_section,
                                        stages_section, working_language_section)


def write_report(results: dict, workdir: str | Path) -> Path:
    """Write report.html, summary.md and figures/*.png for one experiment's results."""
    wd = Path(workdir)
    fig_dir = wd / "figures"
    sections = [answer_section(results), setup_section(results),
                stages_section(results, fig_dir), knowledge_section(results, fig_dir),
                replay_section(results), working_language_section(results, fig_dir),
                neurons_section(results, fig_dir), algorithm1_section(results, fig_dir),
                mixtures_section(results, fig_dir), comparison_section(results, fig_dir),
                Section("Where this agrees or disagrees with the paper", paper_text(results)),
                provenance_section(results)]
    cfg = results["config"]
    subtitle = (f"{results.get('name')} - primary {cfg['primary']}; new {', '.join(cfg['new_languages'])}; "
                f"model preset {cfg['model']['preset']}; seeds {cfg['scratch']['seeds']}. "
                "Every number is in results.json next to this file.")
    atomic_write_text(wd / "summary.md", f"# {results.get('name')}: key tables\n\n{subtitle}\n\n"
                      + markdown_summary(results))
    return render("babeltower: the Babel Tower experiment", subtitle, sections, wd / "report.html")
