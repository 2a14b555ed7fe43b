"""The daemon layer: life cycle, scheduling, signals, systemd notify, netlink
watchers, metrics and the live status it publishes. It only schedules and
reports; every change to the kernel goes through `repogate.engine`.
"""
