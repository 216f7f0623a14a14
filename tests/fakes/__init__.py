"""Fake inference runtimes for tests: real aiohttp servers on 127.0.0.1 (port 0).

Each module imitates one runtime's documented HTTP protocol and names the document it
follows; `base.FakeServer` runs them and records exactly what each request carried.
"""
