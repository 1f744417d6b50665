"""The shipped example policies (ONNX and their source checkpoints) with the scripts that
trained and evaluated them; installed as package data so the demo runs from a wheel.
"""
