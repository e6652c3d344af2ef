X='loader'
