# Defaults of the devuser element; a recipe's environment wins.
export DIB_DEV_USER_USERNAME=${DIB_DEV_USER_USERNAME:-devuser}
