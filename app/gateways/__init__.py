"""Gateway phones: Android phones running cht-gateway that send our SMS from their SIM."""
