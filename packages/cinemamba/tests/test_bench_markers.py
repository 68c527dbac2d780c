"""Generated blocks spliced into hand-written pages (scripts/fvd_docs.py, ablation_docs.py)."""

from cinemamba.apps.bench.markers import splice_block

B, E = "<!-- b -->", "<!-- e -->"


def test_block_replaced_between_markers_and_text_around_kept():
    page = f"# T\n\nintro\n\n{B}\nold\n{E}\n\nafter\n"
    assert splice_block(page, f"{B}\nnew\n{E}", B, E) == f"# T\n\nintro\n\n{B}\nnew\n{E}\n\nafter\n"


def test_first_block_goes_below_the_heading_else_at_the_end():
    page = "# T\n\n## Results\nkept\n"
    once = splice_block(page, f"{B}\nx\n{E}", B, E, after="## Results")
    assert once == f"# T\n\n## Results\n\n{B}\nx\n{E}\nkept\n"
    assert splice_block(once, f"{B}\ny\n{E}", B, E, "## Results").count(B) == 1  # replaced
    assert splice_block("# T\n", f"{B}\nz\n{E}", B, E, "## Nope") == f"# T\n\n{B}\nz\n{E}\n"
