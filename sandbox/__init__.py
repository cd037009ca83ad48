"""Simulators of the outside world, run as small HTTP services on loopback.

Our code reaches them only through adapter interfaces and configured URLs (e.g. core/sms.py and
TONGBAN_SMS_GATEWAY_URL), exactly as it would reach the real providers. `tongban sandbox start` runs every
provider listed in sandbox/providers.py in one process; each keeps its state in memory. sandbox/frame.py has
what they share: GET /health and fault injection (POST /sandbox/faults {fail_next, latency_ms}).
"""
