"""Every simulated provider the runner knows. To add one: write a module like sandbox/sms.py that exposes
PROVIDER, add its port and URL fields to Settings, and list it here."""

from __future__ import annotations

from sandbox import acquirer, enterprise, face, medical, population, sms, transit
from sandbox.frame import Provider

PROVIDERS: dict[str, Provider] = {
    provider.name: provider
    for provider in (
        sms.PROVIDER,
        enterprise.PROVIDER,
        population.PROVIDER,
        face.PROVIDER,
        transit.PROVIDER,
        medical.PROVIDER,
        acquirer.PROVIDER,
    )
}
