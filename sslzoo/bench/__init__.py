"""The benchmark harness: grids of runs, a results store, mean±std tables and plots."""
