"""Where the runtime's data goes: the flight recorder (files), the telemetry publisher and the
command server (threads, ZMQ sockets).
"""
