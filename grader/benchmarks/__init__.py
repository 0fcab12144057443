"""Benchmarks for `python -m grader bench`. Each module here registers its entries with
`@benchmark("name")`; a function returns a dict of figures, or raises Skip("why")."""
