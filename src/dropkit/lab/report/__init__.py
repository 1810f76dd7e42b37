"""Presentation: the comparison table and the self-contained HTML report."""
