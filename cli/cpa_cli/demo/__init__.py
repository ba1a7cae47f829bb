"""What `cpa demo` runs besides the scheduler and agents: loopback stand-ins for the outside world.

`portal` is a small supplier portal (login, invoice list, invoice PDFs); the mail side adds a
loopback Microsoft Graph and token endpoint. They speak real HTTP on 127.0.0.1, so the agents'
browser and mail executors run against them exactly as they would against the real services.
"""
