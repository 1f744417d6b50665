"""The hot path and what it needs: the guard, its state table, the checked policy, deadline
mode, the pacer and the tick ring. No I/O, no sockets, no threads but the deadline worker,
and no heavy imports (zmq, torch, mujoco, gymnasium, rich, matplotlib, ray).
"""
