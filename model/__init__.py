X='model'
