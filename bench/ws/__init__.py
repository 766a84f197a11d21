"""The parts of the socket scenarios (`python -m bench ws-idle|ws-chat`, bench/sockets.py):
socket clients, client processes, servers and accounts, the measurements, their results."""
