"""Shared subscriptions: two members of `$share/workers/...` between them get every
message, each one to exactly one member."""

from paho_peer import Peer, arguments, emit, run

COUNT = 40


def main():
    args = arguments()
    members = {}
    for name in ("member-a", "member-b"):
        member = Peer(args.port, args.version, client_id=name)
        emit(event="suback", member=name, codes=member.subscribe("$share/workers/jobs/#", 1))
        # An ordinary subscription that both get: the fence.
        member.subscribe("fence", 1)
        members[name] = member
    publisher = Peer(args.port, args.version, client_id="jobs-pub")
    for i in range(COUNT):
        publisher.publish(f"jobs/{i % 3}", f"job-{i}", 1)
    publisher.publish("fence", "fence", 1)
    for name, member in members.items():
        received = [
            message
            for message in member.messages_until("fence")
            if message["topic"] != "fence"
        ]
        emit(
            event="member",
            member=name,
            payloads=[message["payload"] for message in received],
            qos=sorted({message["qos"] for message in received}),
        )
    publisher.disconnect()
    for member in members.values():
        member.disconnect()


run(main)
