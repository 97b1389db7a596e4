"""The JSON values the fuzz tests write into config files: every type, edge numbers included."""

from __future__ import annotations

from hypothesis import strategies as st

JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3000),
    st.floats(-2, 300),
    st.sampled_from([float("nan"), float("inf")]),
    st.text(max_size=12),
    st.lists(st.integers(-3, 9), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
