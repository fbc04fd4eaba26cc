from openrlhf_eva.report import main

main()
