"""QoS 2 both ways: a QoS 2 subscriber gets each QoS 2 publish exactly once, at QoS 2,
without DUP or RETAIN."""

from paho_peer import Peer, arguments, emit, run


def main():
    args = arguments()
    subscriber = Peer(args.port, args.version, client_id="qos2-sub")
    emit(event="suback", codes=subscriber.subscribe("qos2/#", 2))
    publisher = Peer(args.port, args.version, client_id="qos2-pub")
    for i in range(20):
        publisher.publish("qos2/x", f"m{i}", 2)
    publisher.publish("qos2/x", "fence", 2)
    for message in subscriber.messages_until("fence"):
        emit(event="message", **message)
    subscriber.disconnect()
    publisher.disconnect()


run(main)
