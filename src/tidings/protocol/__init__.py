"""The tidings wire protocol: frames, codecs, topics and the session state machine.

No I/O lives here: no sockets, no asyncio networking, no web framework. The
gateway and the SDK both drive ``session.Session`` over their own transports.
"""
