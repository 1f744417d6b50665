"""Wire formats shared by both ends of a socket, with no sockets of their own: telemetry
messages, the command channel's messages and keys, and the loopback endpoint rule.
"""
