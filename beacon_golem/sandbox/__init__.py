"""An offline Golem network on loopback (`beacon golem sandbox`).

The REST side serves yagna's API well enough for the unmodified yapapi 0.13.1 engine:
server.py (the `Sandbox` object, app wiring, app-key auth), market.py, activity.py, payment.py,
net.py (with the VPN websocket), registry.py (images, as Golem's registry serves them),
providers.py (scripted providers and their negotiation rules), constraints.py (the filter
language), faults.py (`--fault` knobs), records.py (`GET /sandbox/records`), wire.py (errors,
bodies, event feeds), __main__.py (the CLI).

The VM side runs each activity: vm.py and its helpers (namespaces, agent, protocol), image.py.
"""
