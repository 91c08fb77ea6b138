"""Retained messages: set by a retained publish, delivered to a new subscriber with the
retain flag, live deliveries without it, cleared by an empty retained payload."""

from paho_peer import Peer, arguments, emit, run


def main():
    args = arguments()
    publisher = Peer(args.port, args.version, client_id="ret-pub")
    publisher.publish("ret/a", "kept", 1, retain=True)

    first = Peer(args.port, args.version, client_id="ret-first")
    first.subscribe("ret/#", 1)
    emit(event="message", phase="on subscribe", **first.next_message())

    # Published while `first` is subscribed: a live delivery.
    publisher.publish("ret/b", "live retained", 1, retain=True)
    publisher.publish("ret/a", "", 1, retain=True)
    publisher.publish("ret/b", "", 1, retain=True)
    publisher.publish("ret/fence", "fence", 1)
    for message in first.messages_until("fence"):
        emit(event="message", phase="live", **message)

    # Both cleared: a new subscriber gets nothing retained, its first message is the fence.
    second = Peer(args.port, args.version, client_id="ret-second")
    second.subscribe("ret/#", 1)
    publisher.publish("ret/fence", "fence", 1)
    for message in second.messages_until("fence"):
        emit(event="message", phase="after clear", **message)
    for peer in (publisher, first, second):
        peer.disconnect()


run(main)
