print("pbkv")
