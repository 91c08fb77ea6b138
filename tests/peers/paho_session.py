"""Persistent sessions: v3.1.1 clean session 0 and v5 session expiry > 0 keep the
subscriptions and queue QoS 1 messages while the client is away; a clean session, or a
v5 DISCONNECT setting the expiry to 0, leaves nothing behind."""

from paho_peer import Peer, arguments, emit, run


def persistent(args, client_id, **kwargs):
    """A persistent connection in either protocol version."""
    if args.version == "5":
        return Peer(args.port, "5", client_id=client_id, session_expiry=3600, **kwargs)
    return Peer(args.port, "3", client_id=client_id, **kwargs)


def main():
    args = arguments()
    publisher = Peer(args.port, args.version, client_id="sess-pub")

    # First connection: a new session (clean), kept after it disconnects.
    away = persistent(args, "sess-away", clean=True if args.version == "5" else False)
    emit(event="connack", case="first", session_present=away.session_present)
    away.subscribe("sess/#", 1)
    away.disconnect()
    for i in range(3):
        publisher.publish("sess/x", f"queued-{i}", 1)
    back = persistent(args, "sess-away", clean=False)
    emit(event="connack", case="resumed", session_present=back.session_present)
    publisher.publish("sess/x", "fence", 1)
    for message in back.messages_until("fence"):
        emit(event="message", case="resumed", **message)
    back.disconnect()

    # A session that ends: v5 by DISCONNECT with expiry 0, v3.1.1 by a clean session.
    if args.version == "5":
        ending = persistent(args, "sess-ending", clean=True)
        ending.subscribe("sess/#", 1)
        ending.disconnect(session_expiry=0)
    else:
        ending = Peer(args.port, "3", client_id="sess-ending", clean=True)
        ending.subscribe("sess/#", 1)
        ending.disconnect()
    publisher.publish("sess/x", "lost", 1)
    again = persistent(args, "sess-ending", clean=False)
    emit(event="connack", case="after end", session_present=again.session_present)
    again.subscribe("sess/#", 1)
    publisher.publish("sess/x", "fence", 1)
    for message in again.messages_until("fence"):
        emit(event="message", case="after end", **message)
    again.disconnect()
    publisher.disconnect()


run(main)
