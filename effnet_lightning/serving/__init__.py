"""`python cli.py serve`: a trained network behind HTTP on LitServe.

uploads.py   what a POST /predict carries, checked (status and one line when it is not an image)
gate.py      the front door: 503 while loading, upload limits, the checked image to the workers
api.py       the LitAPI the inference workers run: decode, batch, the folded network or ONNX, top-k
server.py    the server: the page at /, dynamic batching, SIGTERM that drains the requests in flight
page.html    the page: choose or drop an image, see its top-5 (no external scripts or fonts)
"""
