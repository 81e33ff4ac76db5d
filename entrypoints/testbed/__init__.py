"""Real processes on loopback for the tests, the benchmarks and the chaos soak: redis-server
(standalone, cluster, Sentinel), the service as a subprocess, the Alpaca-compatible server
in-process, a Redis subscriber and a positions gateway. Installed with the package so that
``mds chaos`` can use them; ``tests/`` re-exports them and adds the pytest fixtures."""
