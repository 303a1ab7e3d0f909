"""The admission webhook: AdmissionReview in/out, the HTTP contract, the app, reload, metrics, serving."""
