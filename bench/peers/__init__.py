"""`vs-socketio`: socialhub side by side with the stack it replaces (Socket.IO 4 + Redis).

The Node parts live here too: `socketio/` (the peer server) and `driver/` (one load
driver for both servers); `npm ci --prefix bench/peers/socketio` and `--prefix
bench/peers/driver` install them. See bench/peers/README.md.
"""
