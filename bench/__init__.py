"""The benchmark harness (issue 5): `python -m bench`. Not part of the shipped package."""
